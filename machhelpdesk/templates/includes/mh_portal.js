// The customer portal's forms (/mh/tickets/<name>, /mh/new). Included into the pages' script block.
// Posts go to machhelpdesk.portal's POST-only methods; the server checks everything again.
window.mh_portal = (function () {
	const t = (text, args) => (window.__ ? __(text, args) : text);

	function show_error(page, text) {
		const box = page.querySelector(".mh-error");
		box.textContent = text;
		box.hidden = !text;
	}

	function error_text(data, status) {
		// Frappe puts frappe.throw()'s message in _server_messages (a JSON list of JSON objects).
		try {
			const messages = JSON.parse(data._server_messages || "[]").map((m) => JSON.parse(m).message);
			if (messages.length) {
				const div = document.createElement("div");
				div.innerHTML = messages.join(" ");
				return div.textContent;
			}
		} catch (e) {
			// fall through to the generic message
		}
		if (status === 413) return t("The files are too large to send.");
		if (status === 429) return t("Too many requests. Please try again later.");
		return t("Sending failed ({0}). Please try again.", [status]);
	}

	async function post(method, body) {
		const response = await fetch(`/api/method/${method}`, {
			method: "POST",
			body,
			credentials: "same-origin",
			headers: { Accept: "application/json", "X-Frappe-CSRF-Token": window.frappe?.csrf_token || "" },
		});
		let data = {};
		try {
			data = await response.json();
		} catch (e) {
			data = {};
		}
		if (!response.ok) throw new Error(error_text(data, response.status));
		return data.message;
	}

	function check_files(form) {
		// The same limit as the server's, so the customer hears at once instead of after an upload.
		const input = form.querySelector('input[type="file"]');
		const limit = Number(form.dataset.limit || 0);
		const files = Array.from((input && input.files) || []);
		if (files.length > Number(form.dataset.maxFiles || 10)) {
			return t("Attach at most {0} files to one message.", [form.dataset.maxFiles]);
		}
		const too_large = files.find((file) => limit && file.size > limit);
		if (too_large) {
			return t("{0} is too large: files may be at most {1}.", [too_large.name, form.dataset.limitLabel]);
		}
		return "";
	}

	function on_submit(page, form, send) {
		form.addEventListener("submit", async (event) => {
			event.preventDefault();
			const problem = check_files(form);
			show_error(page, problem);
			if (problem) return;
			const button = form.querySelector("button[type=submit]");
			button.disabled = true;
			try {
				await send(new FormData(form));
			} catch (error) {
				show_error(page, error.message);
			} finally {
				button.disabled = false;
			}
		});
	}

	function setup_ticket_page() {
		const page = document.querySelector(".mh-ticket");
		if (!page) return;
		const ticket = page.dataset.ticket;
		const form = page.querySelector(".mh-reply-form");
		if (form) {
			on_submit(page, form, async (data) => {
				data.append("ticket", ticket);
				await post("machhelpdesk.portal.reply_to_ticket", data);
				window.location.reload();
			});
		}
		const reopen = page.querySelector(".mh-reopen");
		if (reopen) {
			reopen.addEventListener("click", async () => {
				reopen.disabled = true;
				const data = new FormData();
				data.append("ticket", ticket);
				try {
					await post("machhelpdesk.portal.reopen_ticket", data);
					window.location.reload();
				} catch (error) {
					show_error(page, error.message);
					reopen.disabled = false;
				}
			});
		}
	}

	function setup_new_ticket_page() {
		const page = document.querySelector(".mh-new-ticket-page");
		if (!page) return;
		const form = page.querySelector(".mh-new-form");
		on_submit(page, form, async (data) => {
			const result = await post("machhelpdesk.portal.create_ticket", data);
			if (result.url) {
				window.location.href = result.url;
				return;
			}
			form.hidden = true;
			const done = page.querySelector(".mh-done");
			done.textContent = t("Thank you. Your ticket number is {0}. We will answer you by email.", [
				result.ticket,
			]);
			done.hidden = false;
		});
	}

	return { setup_ticket_page, setup_new_ticket_page };
})();
