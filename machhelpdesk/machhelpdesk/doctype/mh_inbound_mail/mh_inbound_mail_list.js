// Copyright (c) 2026, MachHelpdesk contributors
// License: MIT. See license.txt

const MH_LEDGER_COLORS = {
	Processing: "yellow",
	Ticketed: "green",
	Replied: "green",
	Ignored: "gray",
	Bounced: "orange",
	Blocked: "red",
	Held: "yellow",
	Discarded: "gray",
	"Deleted by Rule": "gray",
	Duplicate: "gray",
	Failed: "red",
	Expired: "gray",
};

frappe.listview_settings["MH Inbound Mail"] = {
	add_fields: ["state"],
	get_indicator(doc) {
		return [__(doc.state), MH_LEDGER_COLORS[doc.state] || "gray", `state,=,${doc.state}`];
	},
};
