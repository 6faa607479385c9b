"""The store: the use cases of received studies, put together from their parts.

:class:`Store` is what every front end uses for studies (C-STORE, storage commitment,
the review commands, the jobs). It is composed, not inherited, of one part per module:

==================================  ==========================================================
part                                what it does
==================================  ==========================================================
:class:`store.archive.Archive`      durable files under the storage root
:class:`store.index.Index`          the studies, instances and findings in the database
:class:`store.placement.Placement`  the per-study lock; each study's files in its state's tree
:class:`store.receiving.Receiving`  reconcile, file and index one received instance
:class:`store.review.Review`        held studies: list, show, release, correct, reject
:class:`store.recovery.Recovery`    finish at start what a crash interrupted
:class:`store.housekeeping.Housekeeping`  aged holds, purge of rejected studies
:class:`store.outbox.Outbox`        the forwarding queue: queued as a study is archived
==================================  ==========================================================

The authorization of an order comes from the worklist gate
(:meth:`worklist.gate.Gate.authorization`), so the store and the worklist agree.
Nothing here logs patient names, IDs or birth dates at INFO.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import peewee as pw

from infra.clock import Clock, wall_clock
from store import commitment
from store.archive import Archive
from store.commitment import CommitmentReport, CommitmentRequest
from store.housekeeping import Housekeeping
from store.forwarding import Destination
from store.index import Index
from store.outbox import Outbox
from store.placement import Placement
from store.receiving import Receiving
from store.reconcile import DEFAULT_HOLD_CODES, PriorStudy
from store.recovery import Recovery
from store.report import Report, load_report
from store.review import Review
from worklist.gate import Gate
from worklist.orders import Order


@dataclass(frozen=True)
class StoreConfig:
    """The settings the store works by (``[storage]``, ``[reconcile]`` and the AE title)."""

    root: os.PathLike[str] | str
    ae_title: str = "GATEKEEPER"
    hold_codes: frozenset[str] = DEFAULT_HOLD_CODES
    rejected_retention_days: int = 30
    held_alert_hours: int = 48
    min_free_mb: int = 0
    #: The ``[forward.NAME]`` destinations, by name (empty: nothing is forwarded).
    destinations: tuple[Destination, ...] = ()
    forwarded_retention_days: int = 0


class Store:
    """Received studies over one database and one storage root."""

    def __init__(self, db: pw.Database, config: StoreConfig, gate: Gate, clock: Clock,
                 queue_clock: Clock = wall_clock) -> None:
        self.config = config
        self.gate = gate
        self.clock = clock
        self.archive = Archive(config.root)
        self.root = self.archive.root
        self.index = Index(db)
        self.placement = Placement(self.archive, self.index)
        self.receiving = Receiving(self.archive, self.index, self.placement, gate.authorization,
                                   hold_codes=config.hold_codes, clock=clock, priors=self.prior_studies)
        self.review = Review(self.archive, self.index, self.placement, self.receiving, gate,
                             ae_title=config.ae_title, clock=clock)
        self.recovery = Recovery(self.archive, self.index, self.placement, self.receiving)
        self.housekeeping = Housekeeping(db, self.archive, self.index, self.placement, clock=clock,
                                         held_alert_hours=config.held_alert_hours,
                                         rejected_retention_days=config.rejected_retention_days)
        self.outbox = Outbox(db, self.index, self.archive, self.placement,
                             {d.name: d for d in config.destinations}, clock=queue_clock,
                             forwarded_retention_days=config.forwarded_retention_days)
        self.receiving.outbox = self.review.outbox = self.outbox
        # The use cases, by name.
        self.receive = self.receiving.receive
        self.recover = self.recovery.run
        self.held_studies = self.review.held_studies
        self.find_held = self.review.find_held
        self.held_study = self.review.held_study
        self.release = self.review.release
        self.correct = self.review.correct
        self.reject = self.review.reject
        self.recheck = self.review.recheck
        self.archived_studies = self.review.archived_studies
        self.flag_aged_holds = self.housekeeping.flag_aged_holds
        self.purge_rejected = self.housekeeping.purge_rejected

    def prior_studies(self, order: Order) -> tuple[PriorStudy, ...]:
        """The archived studies a new study of ``order`` may duplicate (rule 7): those of the order
        itself and of the patient's other orders for the same CPT code. Two indexed queries."""
        others = self.gate.same_procedure_accessions(order)
        return self.index.archived_of_orders({order.accession_number: order, **others})

    def commitment(self, request: CommitmentRequest) -> CommitmentReport:
        """Which referenced instances are durably kept (storage commitment, PS3.4 J.3)."""
        return commitment.assess(request, self.index.stored_instances(self.root, request.references))

    def report(self, since) -> Report:
        """The practice report from day ``since`` to now."""
        import dataclasses

        return dataclasses.replace(load_report(self.gate, self.index, since), forwarding=self.outbox.figures())

    def close(self) -> None:
        """Give up this process's incoming folder (at a clean stop)."""
        self.archive.close()
