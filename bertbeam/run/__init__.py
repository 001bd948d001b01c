"""The launcher: one ``Job`` from options to its outputs and ``_SUMMARY.json`` (launch checks,
the run lock, runners, interrupts, progress, run metadata, finish, summary, report)."""
