"""Where the tests find the shared media: ``$MUSETALK_MEDIA_DIR``, by default ``../shared/media`` beside the checkout."""

import os
from pathlib import Path

MEDIA = Path(os.environ.get("MUSETALK_MEDIA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "media")
MISSING_MEDIA = (f"Test media not found at {MEDIA}: put the shared media folder there (../shared/media beside this "
                 "checkout) or point MUSETALK_MEDIA_DIR at it.")
