"""`riselm run` and `riselm demo`: the stages of a run and what ties them together.

    pipeline   boost -> iteration 1 -> iteration 2 … (or online RL), resumable: `run_pipeline`
    online     the online RL stage: roll out with the live policy, credit, update (riselm.online's math)
    monitor    the online stage's per-step metrics, TensorBoard and curves
    summary    the paper's Table 1 across the stages of a run
    demo       the embedded CPU demo (`riselm demo`): its recipe and from-scratch model

Every path of a run directory comes from riselm.rundir.RunLayout.
"""
