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
		frm.add_custom_button(__("Test rules"), () => machhelpdesk.rules.open_dry_run(frm.doc.name));
		frm.add_custom_button(__("Intake ledger"), () =>
			frappe.set_route("List", "MH Inbound Mail", { imap_account: frm.doc.name })
		);
		if (frm.doc.last_error) {
			frm.dashboard.set_headline_alert(
				`<span class="text-danger">${__("Last pull failed")}: ${frappe.utils.escape_html(frm.doc.last_error)}</span>`
			);
		} else if (frm.doc.enabled && frm.doc.watch_mode === "Push") {
			frm.dashboard.set_headline_alert(
				__("Push: new mail is pulled within seconds (bench mh-idle). Last push: {0}", [
					frm.doc.last_push_on ? frappe.datetime.comment_when(frm.doc.last_push_on) : __("none yet"),
				]),
				"green"
			);
		}
		if (frm.doc.auth_method === "OAuth2" && frm.doc.connected_app && frm.doc.connected_user) {
			frm.call("oauth_status").then(({ message }) => {
				if (message && !message.authorized) {
					frm.dashboard.set_headline_alert(
						__("OAuth2 is chosen but not authorized yet: log in as {0} and press Authorize OAuth2.", [
							frappe.utils.escape_html(frm.doc.connected_user),
						]),
						"yellow"
					);
				}
			});
		}
	},

	auth_method(frm) {
		if (frm.doc.auth_method === "OAuth2" && !frm.doc.connected_user) {
			frm.set_value("connected_user", frappe.session.user);
		}
	},

	authorize_oauth(frm) {
		if (frm.is_dirty()) {
			frappe.msgprint(__("Save the account first."));
			return;
		}
		frm.call("authorize_oauth").then(({ message: url }) => {
			if (url) window.open(url, "_self");
		});
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

frappe.provide("machhelpdesk.rules");

// A dry run of the account's rules (any of them, enabled or not) on past mail or a pasted message.
machhelpdesk.rules.open_dry_run = function (account, draft_rule) {
	const dialog = new frappe.ui.Dialog({
		title: __("Test rules on mail (nothing is changed)"),
		size: "extra-large",
		fields: [
			{
				fieldname: "rule_names",
				fieldtype: "MultiSelectList",
				label: __("Rules (empty: the account's enabled rules)"),
				hidden: draft_rule ? 1 : 0,
				get_data: (txt) =>
					frappe.db.get_link_options("MH Processing Rule", txt, {
						imap_account: account,
					}),
			},
			{ fieldname: "last", fieldtype: "Int", label: __("Last N messages of the ledger"), default: 20 },
			{
				fieldname: "raw",
				fieldtype: "Code",
				label: __("Or paste a raw message (.eml source)"),
			},
			{ fieldname: "results", fieldtype: "HTML" },
		],
		primary_action_label: __("Run"),
		primary_action(values) {
			frappe
				.call({
					method: "machhelpdesk.rule_testing.dry_run_rules",
					type: "POST",
					args: {
						account,
						rule_names: values.rule_names || [],
						draft_rules: draft_rule ? [draft_rule] : [],
						last: values.last,
						raw: values.raw || null,
					},
					freeze: true,
				})
				.then(({ message }) => dialog.fields_dict.results.$wrapper.html(message.html));
		},
	});
	dialog.show();
};
