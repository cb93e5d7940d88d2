"""The wire contract: bus messages (``messages``), envelopes (``envelope``), names and rights (``names``),
REST bodies (``rest``) and the transaction lifecycle (``lifecycle``). Pure: imports only msgspec."""
