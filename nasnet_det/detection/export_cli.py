"""``nasnet-det export``: a trained NASNet Faster R-CNN to TorchScript or ONNX, optionally checked on images.

    nasnet-det export --config-file CFG --format torchscript|onnx --output PATH [--check IMAGE ...]
                      [--check-existing] [KEY VALUE ...]

``MODEL.WEIGHTS`` names the trained detector. The ``KEY VALUE`` overrides start at the first upper-case
``SECTION.KEY`` that is not an option's value, so a path such as ``--output MODEL.onnx`` stays a path. The
model is traced on the first ``--check`` image (a photo of the package's COCO sample without one). ``--check``
runs the eager and the exported model on every image, prints one comparison line each and exits 1 unless all
agree (tolerance: nasnet_det.detection.export); ``--check-existing`` checks the file already at ``--output``
instead of exporting. Bad input (a config key, a missing file or image, a file that is not an image, an
unsupported format, a model that cannot be exported): one ``error:``
line, exit 2.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from nasnet_det.utils.errors import BadInputError, exit_2_on_bad_input
from nasnet_det.utils.logs import show_package_logs

SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "data" / "sample" / "coco_sample" / "images" / "000000000009.jpg"


# options followed by exactly one value, and the list option whose first value is always a value (an image)
ONE_VALUE_OPTIONS = ("--config-file", "--format", "--output")
LIST_OPTIONS = ("--check",)
CONFIG_KEY = re.compile(r"[A-Z][A-Z0-9_]*(\.[A-Z][A-Z0-9_]*)+")


def first_config_key(argv: list[str], sections: set[str]) -> int:
    """Where the ``KEY VALUE`` overrides start in ``argv``: the first ``SECTION.KEY`` (upper case, a known top-level
    section) that is not an option's value, so that ``--output MODEL.onnx`` or ``--check MODEL.JPG`` stay paths.
    ``len(argv)`` when there is none."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ONE_VALUE_OPTIONS or arg in LIST_OPTIONS:
            i += 2  # the option and its (first) value, whatever that looks like
            continue
        if CONFIG_KEY.fullmatch(arg) and arg.split(".")[0] in sections:
            return i
        i += 1
    return len(argv)


def check_images_readable(paths: list[str]) -> None:
    """Each ``--check`` image exists and decodes to 8-bit RGB, before the (slow) model build; otherwise one line."""
    from nasnet_det.utils.images import read_rgb8

    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"--check image {missing[0]} does not exist"
                                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    for path in paths:
        try:
            read_rgb8(path)
        except BadInputError as e:
            raise BadInputError(f"--check image {e}") from None
        except Exception as e:  # noqa: BLE001 - PIL raises many types for a file that is not an image
            raise BadInputError(f"--check image {path} is not a readable image ({type(e).__name__}: {e}); expected "
                                "a JPEG, PNG or other image file PIL can decode") from None


@exit_2_on_bad_input
def main(argv: list[str] | None = None) -> int:
    from nasnet_det.detection.export import FORMATS

    parser = argparse.ArgumentParser(prog="nasnet-det export", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--format", required=True, help=f"one of {', '.join(FORMATS)}")
    parser.add_argument("--output", required=True, help="the exported file (.ts / .onnx)")
    parser.add_argument("--check", nargs="+", metavar="IMAGE", default=[],
                        help="images on which the exported model must detect what the eager one does")
    parser.add_argument("--check-existing", action="store_true",
                        help="do not export: check the file already at --output against the eager model")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    argv = list(sys.argv[1:] if argv is None else argv)
    # --check takes several images, so the KEY VALUE overrides start at the first config key
    from nasnet_det.detection.config import get_nasnet_cfg

    start = first_config_key(argv, set(get_nasnet_cfg().keys()))
    args = parser.parse_args(argv[:start])
    args.opts += argv[start:]
    if args.format not in FORMATS:  # before the (slow) imports and model build
        raise BadInputError(f"--format {args.format!r} is not supported; expected one of {', '.join(FORMATS)}")
    check_images_readable(args.check)
    if Path(args.output).is_dir():
        raise IsADirectoryError(f"--output {args.output} is a folder; give the path of the file to write")
    show_package_logs()

    from nasnet_det.config import load_cfg
    from nasnet_det.detection.config import validate_input_sizes
    from nasnet_det.detection.export import check_exported, export_model, load_eager_model, preprocess

    cfg = load_cfg(get_nasnet_cfg(), args.config_file, args.opts)
    validate_input_sizes(cfg)
    model = load_eager_model(cfg)
    if args.check_existing:
        if not args.check:
            raise BadInputError("--check-existing needs --check IMAGE ...")
        path = Path(args.output)
    else:
        trace_image = args.check[0] if args.check else SAMPLE_IMAGE
        path = export_model(model, preprocess(cfg, trace_image), args.format, args.output)
        print(f"wrote {args.format} model to {path}")
    if not args.check:
        return 0
    comparisons = check_exported(cfg, model, path, args.format, args.check)
    for c in comparisons:
        print(c.line())
    differ = [c for c in comparisons if not c.agree]
    if differ:
        print(f"check failed: the exported model differs from the eager one on {len(differ)} of "
              f"{len(comparisons)} images", file=sys.stderr)
        return 1
    print(f"check passed on {len(comparisons)} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
