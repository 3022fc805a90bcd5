// Copyright (c) 2026, MachHelpdesk contributors
// License: MIT. See license.txt

const MH_CATEGORY_COLORS = { Open: "red", Waiting: "orange", Resolved: "green", Closed: "gray" };

frappe.listview_settings["MH Ticket"] = {
	add_fields: ["status", "status_category"],
	get_indicator(doc) {
		return [__(doc.status), MH_CATEGORY_COLORS[doc.status_category] || "blue", `status,=,${doc.status}`];
	},
};
