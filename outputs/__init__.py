"""Remote outputs fed from the store: Nightscout (REST API v1) and MQTT.

``build_outputs(settings, astore, client)`` makes the outputs a settings instance enables; each
has ``run`` (start it with ``nursery.start``), ``wake`` (call after every persisted frame),
``status`` and ``deliver_until_idle`` (``once`` mode). The Nightscout output also answers
``newest(collection)`` for gap analysis on an empty store.
"""

from outputs.build import build_outputs
from outputs.delivery import Output
from outputs.settings import OutputSettings

__all__ = ["Output", "OutputSettings", "build_outputs"]
