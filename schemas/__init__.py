"""The wire contract: bus messages (``messages``), envelopes (``envelope``), names and rights (``names``),
KV values (``kv``) and REST bodies (``rest``). Pure: imports only msgspec and, for the lifecycle's enums
stored in KV values, ``core.lifecycle`` (stdlib only)."""
