"""RL with DAPO on precomputed memories (paper Section 3.3.3, Table 10): only the decoder is trained.

    accelerate launch --config_file examples/accelerate/rl_multi_gpu.yaml examples/train_rl.py --config examples/configs/rl.yaml
    python examples/train_rl.py --config examples/configs/rl_tiny.yaml

Any field of `MemCompGRPOConfig`, `RLScriptArguments` or `JudgeArguments` (`trainers.rl_run`) can be set in the YAML or
on the command line.
"""

from trainers.rl_run import main

if __name__ == "__main__":
    main()
