"""The wire contract: bus messages (``messages``), envelopes (``envelope``), names and rights (``names``),
KV values (``kv``) and REST bodies (``rest``). Pure: imports only msgspec. (The spend lifecycle is
``core.lifecycle``.)"""
