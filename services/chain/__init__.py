"""Bitcoin chain clients: Esplora REST (:mod:`services.chain.esplora`, the default backend, also spoken by
``services.devchain``) and Bitcoin Core JSON-RPC (:mod:`services.chain.bitcoind_rpc`)."""
