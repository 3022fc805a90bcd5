// Copyright (c) 2026, MachHelpdesk contributors
// License: MIT. See license.txt

// The ticket form. The conversation is Frappe's Communication timeline: agents answer with its email
// composer (New Email, or Reply on a message), which here also asks which status the ticket takes
// after the reply. Comments in the timeline are internal notes and are never mailed.
//
// Mail shown here was sanitized when it arrived. Two things more happen in the browser:
// - the timeline's header line (subject, sender's name) is escaped: Frappe prints it as HTML;
// - remote images stay unloaded (the sanitizer parked their address in data-remote-src) until the
//   agent clicks "Load images" for this ticket.

frappe.provide("machhelpdesk.ticket");

frappe.ui.form.on("MH Ticket", {
	setup(frm) {
		frm.email_field = "raised_by";
		machhelpdesk.ticket.guard_timeline_of(frm);
		machhelpdesk.ticket.extend_composer();
		machhelpdesk.ticket.load_statuses();
	},

	refresh(frm) {
		frm.email_field = "raised_by";
		if (frm.is_new()) return;
		if (frappe.model.can_email(null, frm)) {
			frm.add_custom_button(__("Reply"), () =>
				frm.timeline.compose_mail(machhelpdesk.ticket.last_customer_message(frm))
			);
		}
		const assigned = JSON.parse(frm.doc._assign || "[]");
		if (!assigned.includes(frappe.session.user)) {
			frm.add_custom_button(__("Assign to me"), () =>
				frappe
					.xcall("frappe.desk.form.assign_to.add", {
						doctype: frm.doctype,
						name: frm.docname,
						assign_to: [frappe.session.user],
					})
					.then(() => frm.reload_doc())
			);
		}
	},

	timeline_refresh(frm) {
		machhelpdesk.ticket.offer_remote_images(frm);
	},
});

Object.assign(machhelpdesk.ticket, {
	statuses: [],

	load_statuses() {
		// For the composer's "Status after sending": Waiting ones first, the helpdesk's default on top.
		const order = { Waiting: 0, Open: 1, Resolved: 2, Closed: 3 };
		return frappe.db
			.get_list("MH Ticket Status", {
				fields: ["name", "category", "sort_order"],
				order_by: "sort_order asc",
				limit: 100,
			})
			.then((rows) => {
				machhelpdesk.ticket.statuses = rows.sort(
					(a, b) => (order[a.category] ?? 9) - (order[b.category] ?? 9) || a.sort_order - b.sort_order
				);
			});
	},

	last_customer_message(frm) {
		const messages = (frm.get_docinfo().communications || []).filter(
			(c) => c.communication_medium === "Email" && c.sent_or_received === "Received"
		);
		messages.sort((a, b) => new Date(b.communication_date) - new Date(a.communication_date));
		return messages[0] || null;
	},

	guard_timeline_of(frm) {
		// Frappe's timeline prints a message's subject and sender name as HTML, and mail intake stores
		// them as the mail had them. Escape them in the form's docinfo before the first render (the
		// timeline renders as soon as the footer makes it, right after "setup"), and in messages the
		// timeline loads later ("load more").
		const get_docinfo = frm.get_docinfo.bind(frm);
		frm.get_docinfo = () => {
			const info = get_docinfo();
			(info && info.communications ? info.communications : []).forEach(machhelpdesk.ticket.escape_headers);
			return info;
		};
		let timeline = frm.timeline;
		Object.defineProperty(frm, "timeline", {
			configurable: true,
			enumerable: true,
			get: () => timeline,
			set: (value) => {
				timeline = value;
				machhelpdesk.ticket.guard_timeline(value);
			},
		});
		if (timeline) machhelpdesk.ticket.guard_timeline(timeline);
	},

	guard_timeline(timeline) {
		if (!timeline || timeline.__mh_guarded) return;
		timeline.__mh_guarded = true;
		const render = timeline.get_communication_timeline_content.bind(timeline);
		timeline.get_communication_timeline_content = (doc, allow_reply = true) =>
			render(machhelpdesk.ticket.escape_headers(doc), allow_reply);
	},

	escape_headers(doc) {
		// Tags become text; entities stay (intake stores these two with < and > already as entities).
		const without_tags = (text) => (text || "").replace(/</g, "&lt;").replace(/>/g, "&gt;");
		if (doc && !doc.__mh_escaped) {
			doc.subject = without_tags(doc.subject);
			doc.sender_full_name = without_tags(doc.sender_full_name);
			doc.__mh_escaped = true;
		}
		return doc;
	},

	unescape(text) {
		// DOMParser builds an inert document: nothing in it loads or runs.
		return new DOMParser().parseFromString(text || "", "text/html").documentElement.textContent;
	},

	offer_remote_images(frm) {
		const wrapper = frm.timeline && frm.timeline.timeline_wrapper;
		if (!wrapper) return;
		wrapper.find(".mh-remote-images").remove();
		const images = wrapper.find("img[data-remote-src]");
		if (!images.length) return;
		if (frm.__mh_images_loaded_for === frm.docname) {
			machhelpdesk.ticket.load_remote_images(images);
			return;
		}
		const bar = $(`<div class="mh-remote-images text-muted small" style="margin: var(--margin-sm) 0">
				<span></span>
				<button class="btn btn-xs btn-default mh-load-images"></button>
			</div>`);
		bar.find("span").text(
			__("{0} remote images are not loaded, so the sender cannot see that you read the mail.", [
				images.length,
			])
		);
		bar.find("button")
			.text(__("Load images"))
			.on("click", () => {
				frm.__mh_images_loaded_for = frm.docname;
				machhelpdesk.ticket.load_remote_images(wrapper.find("img[data-remote-src]"));
				bar.remove();
			});
		wrapper.find(".timeline-items").first().before(bar);
	},

	load_remote_images(images) {
		images.each((_i, img) => {
			const url = img.getAttribute("data-remote-src") || "";
			// The sanitizer only parks http(s) addresses; check again before loading.
			if (/^https?:\/\//i.test(url)) {
				img.setAttribute("referrerpolicy", "no-referrer");
				img.setAttribute("src", url);
			}
			img.removeAttribute("data-remote-src");
		});
	},

	extend_composer() {
		const Base = frappe.views.CommunicationComposer;
		if (Base.__mh_extended) return;
		class TicketComposer extends Base {
			constructor(opts) {
				// A reply's subject comes from the escaped timeline copy: give the composer plain text.
				if (opts && opts.frm?.doctype === "MH Ticket" && opts.subject) {
					opts.subject = machhelpdesk.ticket.unescape(opts.subject);
				}
				super(opts);
			}

			get_fields() {
				const fields = super.get_fields();
				const statuses = machhelpdesk.ticket.statuses;
				if (this.frm?.doctype !== "MH Ticket" || !statuses.length) return fields;
				const waiting = statuses.find((s) => s.category === "Waiting");
				fields.push({
					label: __("Status after sending"),
					fieldtype: "Select",
					fieldname: "mh_status_after_reply",
					options: statuses.map((s) => s.name),
					default: waiting ? waiting.name : statuses[0].name,
					description: __(
						"A status of the Waiting category means the customer has to answer; auto close watches those."
					),
				});
				return fields;
			}

			async get_signature(sender_email) {
				// Frappe looks the signature up in Email Account, which agents may not read: they would
				// get "Not permitted" on every reply. Their own signature (in their User) still applies.
				if (
					this.frm?.doctype === "MH Ticket" &&
					!frappe.boot.user.email_signature &&
					!frappe.model.can_read("Email Account")
				) {
					return "";
				}
				return super.get_signature(sender_email);
			}

			send_email(btn, form_values, ...rest) {
				const status = form_values.mh_status_after_reply;
				if (this.frm?.doctype !== "MH Ticket" || !status) {
					return super.send_email(btn, form_values, ...rest);
				}
				return frappe
					.xcall("machhelpdesk.status_flow.choose_status_after_reply", {
						ticket: this.frm.docname,
						status,
					})
					.then(() => super.send_email(btn, form_values, ...rest));
			}
		}
		TicketComposer.__mh_extended = true;
		frappe.views.CommunicationComposer = TicketComposer;
	},
});
