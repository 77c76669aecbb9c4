import subprocess
import sys


def test_import_is_light():
    """Importing the package must not import the heavy stack (anndata, torch, scvi-tools, scanpy)."""
    code = (
        "import sys, scgeneformer as sgf; "
        "heavy = [m for m in ('anndata', 'torch', 'scvi', 'scanpy', 'transformers') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_lazy_attributes():
    import scgeneformer as sgf

    assert callable(sgf.pp.rank_encode)
    assert sgf.Vocabulary.__name__ == "Vocabulary"
    assert "pp" in dir(sgf)
