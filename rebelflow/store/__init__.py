"""The artifact store: references and fingerprints (`refs`), the local directory with its writer and
campaign index (`local`), and the Hub copy of every artifact (`hub`)."""
