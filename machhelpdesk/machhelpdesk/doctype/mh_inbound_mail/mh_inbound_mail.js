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
		if (frm.doc.state === "Held" && ["MH Agent", "MH Manager", "System Manager"].some((r) => frappe.user.has_role(r))) {
			const act = (method, confirm_text) => {
				const run = () =>
					frappe
						.call({ method: `machhelpdesk.challenge_response.${method}`, args: { names: [frm.doc.name] }, freeze: true })
						.then(({ message }) => {
							frappe.show_alert({ message: message.message, indicator: "green" });
							frm.reload_doc();
						});
				confirm_text ? frappe.confirm(confirm_text, run) : run();
			};
			frm.add_custom_button(__("Release"), () => act("release_held_mail"), __("Held mail"));
			frm.add_custom_button(
				__("Always allow sender"),
				() => act("always_allow_senders", __("Confirm {0} without the link? All held mail from this address becomes tickets.", [frappe.utils.escape_html(frm.doc.from_email)])),
				__("Held mail")
			);
			frm.add_custom_button(
				__("Block sender"),
				() => act("block_senders", __("Block {0}? A blocking filter is added, and the held mail from this address is dropped.", [frappe.utils.escape_html(frm.doc.from_email)])),
				__("Held mail")
			);
		}
		if (frm.doc.ticket) {
			frm.add_custom_button(__("Open ticket"), () => frappe.set_route("Form", "MH Ticket", frm.doc.ticket));
		}
	},
});
