"""Orders, authorizations, payer policy, worklist gating and MWL matching."""
