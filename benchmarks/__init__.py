"""Benchmarks for hndesc-features (repo-only): `python -m benchmarks.<name> --help`.

hpatches            HPatches MMA (D2-Net protocol) and homography accuracy / matching score
                    (SuperPoint protocol) on any folder in HPatches layout
make_dev_hpatches   our dev HPatches from the held-out photos (synthetic homographies/photometry)
localization_gt     offline Aachen-style localization on scenes with metric GT cameras (Strecha)
aachen_v1_1         Aachen Day-Night v1.1 runner (hloc steps + NetVLAD), submission file
inloc               InLoc runner (NetVLAD top-40 + localize_inloc), submission file
tokyo247            Tokyo 24/7 place recognition: NetVLAD shortlist re-ranked by inliers
report              papers' tables in markdown from our results JSON (+ server numbers)
speed               images/s and peak memory per conf vs OpenCV SIFT
webcam              real illumination pairs of static webcams (MMA, GT = identity)
epipolar            Strecha pairs with GT cameras: epipolar precision, relative-pose AUC
image_retrieval     ROxford5k / RParis6k, global shortlist re-ranked by local matches
conf_table          the README's conf table from the runners' JSON

experiments/        the studies behind the docs: `python -m benchmarks.experiments.<name> --help`
"""
