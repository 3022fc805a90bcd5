// Copyright (c) 2026, MachHelpdesk contributors
// License: MIT. See license.txt

frappe.ui.form.on("MH Inbound Mail", {
	refresh(frm) {
		frm.disable_save();
		if (frm.doc.state === "Failed" && frm.doc.raw_path && frm.perm[0]?.write) {
			frm.add_custom_button(__("Re-process"), () =>
				frm.call("reprocess").then(({ message }) => {
					frappe.show_alert({ message, indicator: "green" });
					frm.reload_doc();
				})
			);
		}
		if (frm.doc.ticket) {
			frm.add_custom_button(__("Open ticket"), () => frappe.set_route("Form", "MH Ticket", frm.doc.ticket));
		}
	},
});
