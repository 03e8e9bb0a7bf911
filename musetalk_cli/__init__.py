"""The ``musetalk`` application, beside the model library ``musetalk_lib``.

- ``main``: the ``musetalk`` command (dub, avatar, weights, lora, finetune, bench, queue).
- ``bench``: ``musetalk bench``, frames per second per stage against the official configuration.
- ``queue_client``: ``musetalk queue``, API-format workflows run on a ComfyUI server over HTTP.

Everything here calls the library's stages; no pipeline logic lives here.
"""
