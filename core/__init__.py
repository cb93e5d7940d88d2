"""The spend's domain logic, pure (no I/O, no asyncio, no NATS; time is passed in): the lifecycle
(``lifecycle``), the round record it moves (``round``), vote counting and quorum certificates
(``tally``), the policy check a signer applies (``policy``) and the choice of signer sets
(``signer_set``). Services are shells that move bytes between the bus and these functions."""
