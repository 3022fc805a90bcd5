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

// Held mail: the challenge's state is part of the indicator ("Held: challenge outstanding").
const MH_HELD_LABELS = {
	Outstanding: __("Held: challenge outstanding"),
	"Not Sent": __("Held: not challenged"),
	Confirmed: __("Held: sender confirmed"),
	Expired: __("Held: challenge expired"),
	Superseded: __("Held: challenge withdrawn"),
};

const MH_HELD_MAIL_ROLES = ["MH Agent", "MH Manager", "System Manager"];

frappe.listview_settings["MH Inbound Mail"] = {
	add_fields: ["state", "challenge_status", "held_on", "from_email"],
	get_indicator(doc) {
		const label =
			doc.state === "Held" && MH_HELD_LABELS[doc.challenge_status]
				? MH_HELD_LABELS[doc.challenge_status]
				: __(doc.state);
		return [label, MH_LEDGER_COLORS[doc.state] || "gray", `state,=,${doc.state}`];
	},
	onload(listview) {
		listview.page.add_inner_button(__("Held mail"), () => {
			listview.filter_area.clear(false).then(() => {
				listview.filter_area.add([[listview.doctype, "state", "=", "Held"]]);
				listview.sort_selector.set_value("held_on", "asc");
			});
		});
		if (!MH_HELD_MAIL_ROLES.some((role) => frappe.user.has_role(role))) {
			return;
		}
		const act = (method, confirm_text) => {
			const names = listview.get_checked_items(true);
			if (!names.length) {
				frappe.msgprint(__("Select the held messages first."));
				return;
			}
			const run = () =>
				frappe
					.call({ method: `machhelpdesk.challenge_response.${method}`, args: { names }, freeze: true })
					.then(({ message }) => {
						frappe.show_alert({ message: message.message, indicator: "green" });
						listview.clear_checked_items();
						listview.refresh();
					});
			confirm_text ? frappe.confirm(confirm_text, run) : run();
		};
		listview.page.add_actions_menu_item(__("Release"), () => act("release_held_mail"), false);
		listview.page.add_actions_menu_item(
			__("Always allow sender"),
			() =>
				act(
					"always_allow_senders",
					__("Confirm these senders without the link? All their held mail becomes tickets, and their mail is not held again.")
				),
			false
		);
		listview.page.add_actions_menu_item(
			__("Block sender"),
			() =>
				act(
					"block_senders",
					__("Block these senders? A blocking filter is added for each address, and their held mail is dropped.")
				),
			false
		);
	},
};
