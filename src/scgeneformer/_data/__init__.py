"""Encoded data as the models read it: AnnData/MuData access, the encoding contract and corpora on disk."""
