// Copyright (c) 2026, MachHelpdesk contributors
// License: MIT. See license.txt

const MH_DEFAULT_PORTS = { "SSL/TLS": 993, STARTTLS: 143, None: 143 };
const MH_POP3_PORTS = [110, 995];

frappe.ui.form.on("MH IMAP Account", {
	refresh(frm) {
		if (frm.is_new()) return;
		frm.add_custom_button(__("Test connection"), () => {
			frappe.dom.freeze(__("Connecting to {0}…", [frm.doc.imap_server]));
			frm.call("test_connection")
				.then(({ message: report }) => {
					const folders = (report.folders || []).map((f) => frappe.utils.escape_html(f)).join(", ");
					frappe.msgprint({
						title: report.ok ? __("Connection works") : __("Connection failed"),
						indicator: report.ok ? "green" : "red",
						message: `<p>${frappe.utils.escape_html(report.message)}</p>` +
							(folders ? `<p><b>${__("Folders")}:</b> ${folders}</p>` : ""),
					});
				})
				.finally(() => frappe.dom.unfreeze());
		});
		if (frm.doc.enabled) {
			frm.add_custom_button(__("Pull now"), () =>
				frm.call("pull_now").then(({ message }) => frappe.show_alert({ message, indicator: "blue" }))
			);
		}
		frm.add_custom_button(__("Intake ledger"), () =>
			frappe.set_route("List", "MH Inbound Mail", { imap_account: frm.doc.name })
		);
		if (frm.doc.last_error) {
			frm.dashboard.set_headline_alert(
				`<span class="text-danger">${__("Last pull failed")}: ${frappe.utils.escape_html(frm.doc.last_error)}</span>`
			);
		}
	},

	encryption(frm) {
		// The port follows the encryption while it is still one of the defaults.
		if (!frm.doc.port || Object.values(MH_DEFAULT_PORTS).includes(frm.doc.port)) {
			frm.set_value("port", MH_DEFAULT_PORTS[frm.doc.encryption] || 993);
		}
	},

	port(frm) {
		if (MH_POP3_PORTS.includes(frm.doc.port)) {
			frappe.msgprint({
				title: __("POP3 port"),
				indicator: "orange",
				message: __(
					"Port {0} is a POP3 port, and the Email Parser reads mail over IMAP. Use 993 for SSL/TLS, or 143 for STARTTLS or no encryption.",
					[frm.doc.port]
				),
			});
		}
	},
});
