"""The published Geneformer dictionary files: paths in the Hugging Face repository, sizes and sha256.

Paths are relative to the root of ``ctheodoris/Geneformer`` at the commit pinned in :mod:`scgeneformer._settings`;
sizes and sha256 are those of the upstream files (Git LFS object ids).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RemoteFile:
    """A file of the upstream repository."""

    path: str
    size: int
    sha256: str


_V1_DIR = "geneformer/gene_dictionaries_30m/"
_V2_DIR = "geneformer/"

#: The four dictionary files of each vocabulary version, keyed by their role.
DICTIONARY_FILES: dict[str, dict[str, RemoteFile]] = {
    "V1": {
        "token_dictionary": RemoteFile(
            _V1_DIR + "token_dictionary_gc30M.pkl",
            788_424,
            "ab9dc40973fa5224d77b793e2fd114cacf3d08423ed9c4c49caf0ba9c7f218f1",
        ),
        "gene_median_dictionary": RemoteFile(
            _V1_DIR + "gene_median_dictionary_gc30M.pkl",
            940_965,
            "b3b589bb5ec75040d05fc44dd6bf0184cf87f3c362cf158d196a6ed3b7fe5f39",
        ),
        "gene_name_id_dict": RemoteFile(
            _V1_DIR + "gene_name_id_dict_gc30M.pkl",
            1_117_117,
            "55e67962e79c0039a6c32d43c5c99f38e51964bbcfa32f736150ee1e285c438c",
        ),
        "ensembl_mapping_dict": RemoteFile(
            _V1_DIR + "ensembl_mapping_dict_gc30M.pkl",
            584_125,
            "eac0fb0b3007267871b6305ac0003ceba19d4f28d85686cb9067ecf142787869",
        ),
    },
    "V2": {
        "token_dictionary": RemoteFile(
            _V2_DIR + "token_dictionary_gc104M.pkl",
            425_590,
            "67c445f4385127adfc48dcc072320cd65d6822829bf27dd38070e6e787bc597f",
        ),
        "gene_median_dictionary": RemoteFile(
            _V2_DIR + "gene_median_dictionary_gc104M.pkl",
            1_512_661,
            "a51c53f6a771d64508dfaf61529df70e394c53bd20856926117ae5d641a24bf5",
        ),
        "gene_name_id_dict": RemoteFile(
            _V2_DIR + "gene_name_id_dict_gc104M.pkl",
            1_660_882,
            "fabfa0c2f49c598c59ae432a32c3499a5908c033756c663b5e0cddf58deea8e1",
        ),
        "ensembl_mapping_dict": RemoteFile(
            _V2_DIR + "ensembl_mapping_dict_gc104M.pkl",
            3_957_652,
            "0819bcbd869cfa14279449b037eb9ed1d09a91310e77bd1a19d927465030e95c",
        ),
    },
}
