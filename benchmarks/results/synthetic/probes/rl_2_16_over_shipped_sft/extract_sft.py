"""Write the SFT model an RL checkpoint holds (its frozen SFT encoder with the shared projection) as a plain folder.

python extract_sft.py RL_CHECKPOINT OUTPUT_FOLDER
"""

import shutil
import sys
from pathlib import Path

import torch

from modeling_memcomp import MemCompForCausalLM

source, destination = map(Path, sys.argv[1:])
model = MemCompForCausalLM.from_pretrained(str(source), dtype=torch.float32)
encoder = model.fingerprint
with torch.no_grad():
    model.language_model.base_model.load_state_dict(model.memory_encoder.state_dict())
frozen = model.memory_encoder.state_dict()
assert all(torch.equal(v, frozen[k]) for k, v in model.language_model.base_model.state_dict().items())
model.memory_encoder, model.config.separate_encoder = None, False
assert model.fingerprint == encoder, "the SFT model's memories differ from the RL checkpoint's"
model.save_pretrained(str(destination))
model.tokenizer.save_pretrained(str(destination))
shutil.copy(source / "memcomp_synthetic.json", destination)  # the corpus seed it trained on
print(f"{destination}: SFT model {encoder}")
