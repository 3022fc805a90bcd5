"""The whole real-world corpus through intake: every message gets exactly one ledger row, no exception escapes."""

import frappe

from machhelpdesk.intake import DUPLICATE, FAILED, STATE_COUNTER
from machhelpdesk.tests.factories import corpus_dir, ledger
from machhelpdesk.tests.test_intake import IntakeTestCase

DOCUMENTED_STATES = set(STATE_COUNTER)


class TestCorpusIntake(IntakeTestCase):
	def test_every_corpus_message_gets_one_documented_outcome(self):
		corpus = corpus_dir()
		if corpus is None:
			self.skipTest("no mail corpus (set MH_CORPUS_DIR)")
		files = sorted(corpus.glob("*.eml"))
		self.assertGreater(len(files), 300)
		appended = 0
		for path in files:
			self.deliver(path.read_bytes())
			appended += 1
		self.assertEqual(len(self.inbox()), appended)

		summary = self.pull()
		self.assertEqual(summary["seen"], appended, summary["text"])
		rows = ledger(self.account.name)
		self.assertEqual(len(rows), appended, "exactly one ledger row per message")
		undocumented = [r for r in rows if r.state not in DOCUMENTED_STATES]
		self.assertEqual(undocumented, [])
		failed = frappe.get_all(
			"MH Inbound Mail",
			filters={"imap_account": self.account.name, "state": FAILED},
			fields=["subject", "error"],
		)
		summaries = "\n".join(f"{r.subject!r}: {r.error.strip().splitlines()[-1]}" for r in failed)
		first = failed[0].error[-3000:] if failed else ""
		self.assertEqual(len(failed), 0, f"{summaries}\n\nThe first in full:\n{first}")
		not_moved = [r for r in rows if r.server_action != "Moved"]
		self.assertEqual(not_moved, [])
		self.assertEqual(self.inbox(), [])
		ticketed = {r.ticket for r in rows if r.state == "Ticketed"}
		self.assertEqual(len(ticketed), sum(1 for r in rows if r.state == "Ticketed"), "no ticket made twice")
		duplicates = [r for r in rows if r.state == DUPLICATE]
		keys = [r.message_key for r in rows if r.state != DUPLICATE]
		self.assertEqual(
			len(keys), len(set(keys)), "a Message-ID seen twice is a duplicate, not a second ticket"
		)
		self.assertTrue(all(r.reason for r in duplicates))

		again = self.pull()
		self.assertEqual((again["seen"], again["tickets"]), (0, 0))
		self.assertEqual(frappe.db.count("MH Inbound Mail", {"imap_account": self.account.name}), appended)
