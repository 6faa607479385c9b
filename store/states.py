"""The states of a received study (rule 5 of docs/rules.md), defined once.

A study is archived when it passed reconciliation (or was released or corrected),
held while it waits for a technologist, rejected when a technologist rejected it (kept
for ``storage.rejected_retention_days``), and purged once the retention job deleted its
files (the row and its findings stay for the record).
"""

ARCHIVED = "archived"
HELD = "held"
REJECTED = "rejected"
PURGED = "purged"
STUDY_STATES = (ARCHIVED, HELD, REJECTED, PURGED)
