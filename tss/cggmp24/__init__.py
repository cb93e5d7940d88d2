"""CGGMP24 threshold ECDSA (Canetti, Gennaro, Goldfeder, Makriyannis, Peled; ePrint 2021/060, 2024 revision),
pure: no I/O. The ``cggmp24`` crate's ``spec/main.tex`` (LFDT-Lockness) is the reference for what is
implemented; proofs and rounds are named after its figures."""
