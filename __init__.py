"""slimnfu: compressed CNNs on a generated DianNao-style accelerator."""
