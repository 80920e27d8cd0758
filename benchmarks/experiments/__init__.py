"""Studies behind the docs (repo-only): `python -m benchmarks.experiments.<name> --help`.

hndesc_ablation          train every HNDesc ablation config and measure dev-HPatches MMA
val_probe                weights vs baselines on the trainer's held-out validation pairs (--diagnose)
val_curves               validation metric vs training step of several runs, one plot + table
match_errors             wrong mutual-NN matches binned by whether their keypoint has a correspondence
surf_vs_sift             our SURF against OpenCV SIFT / RootSIFT on random homographies
residual_tradeoff_probe  CPU time / webcam quality of cheaper residual inference variants
"""
