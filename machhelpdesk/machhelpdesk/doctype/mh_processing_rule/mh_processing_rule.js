// Copyright (c) 2026, MachHelpdesk contributors
// License: MIT. See license.txt

frappe.ui.form.on("MH Processing Rule", {
	refresh(frm) {
		if (!frm.doc.imap_account) return;
		// The rule as it stands in the form, saved or not, on the last mail of its account.
		frm.add_custom_button(__("Test this rule"), () =>
			frappe
				.call({
					method: "machhelpdesk.rule_testing.dry_run_rules",
					type: "POST",
					args: { account: frm.doc.imap_account, rule_names: [], draft_rules: [frm.doc], last: 20 },
					freeze: true,
				})
				.then(({ message }) =>
					frappe.msgprint({ title: __("This rule on the last 20 messages (nothing changed)"), message: message.html, wide: true })
				)
		);
	},
});
