// Copyright (c) 2026, MachHelpdesk contributors
// License: MIT. See license.txt

// Department, status and priority are standard filters (in_standard_filter); the sidebar's "Assigned To"
// works too. The indicator follows the status's category, so renamed statuses keep their colour.
const MH_CATEGORY_COLORS = { Open: "red", Waiting: "orange", Resolved: "green", Closed: "gray" };

frappe.listview_settings["MH Ticket"] = {
	add_fields: ["status", "status_category", "_assign"],
	get_indicator(doc) {
		return [__(doc.status), MH_CATEGORY_COLORS[doc.status_category] || "blue", `status,=,${doc.status}`];
	},
	onload(listview) {
		listview.page.add_inner_button(__("Assigned to me"), () => {
			listview.filter_area.add([[listview.doctype, "_assign", "like", `%${frappe.session.user}%`]]);
		});
		listview.page.add_inner_button(__("Waiting on an agent"), () => {
			listview.filter_area.add([[listview.doctype, "status_category", "=", "Open"]]);
		});
	},
};
