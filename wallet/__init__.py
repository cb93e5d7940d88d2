"""Pure Bitcoin for the threshold wallet: addresses, BIP-32 public derivation, descriptors, coin
selection, fees, sighashes, PSBT and full verification of finished transactions. No I/O."""
