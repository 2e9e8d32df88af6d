"""`python -m attention_lab.config`: regenerate conf/attention/*.yaml from the registry."""

import os

from . import write_attention_yaml

here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf", "attention")
print("wrote", ", ".join(write_attention_yaml(here)), "to", here)
