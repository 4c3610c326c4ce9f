"""Figures of `humwatch score --json` output on a DCASE 2021-2025 test folder, as an operator and DCASE see them.

Usage: humwatch score --json --bundle B TEST/*.wav | python benchmarks/clip_metrics.py
A clip's score is its highest window score (what the agent alarms on). Per domain: ROC AUC of that domain's normal
clips against its anomalous ones, the DCASE 2023 evaluator's AUC (that domain's normal clips against every anomalous
clip), and the shares of anomalous and normal clips above the bundle's threshold; pAUC (FPR <= 0.1) over all clips.
"""
import json
import sys

import numpy as np
from sklearn.metrics import roc_auc_score

rows = [json.loads(line) for line in sys.stdin if line.strip()]
name = [r["file"].rsplit("/", 1)[-1] for r in rows]
score = np.array([r["max_window_score"] for r in rows])
anomaly = np.array(["_anomaly_" in n for n in name])
threshold = rows[0]["threshold"]
for domain in ("source", "target"):
    mine = np.array([f"_{domain}_" in n for n in name])
    normal = mine & ~anomaly
    per_domain = roc_auc_score(anomaly[mine], score[mine])
    official = roc_auc_score(anomaly[normal | anomaly], score[normal | anomaly])
    print(f"{domain}: AUC {per_domain:.3f} (DCASE evaluator {official:.3f}); above threshold {threshold:.3g}: "
          f"{np.mean(score[mine & anomaly] > threshold):.2f} of anomalous, {np.mean(score[normal] > threshold):.2f} "
          "of normal clips")
print(f"pAUC (FPR <= 0.1, both domains) {roc_auc_score(anomaly, score, max_fpr=0.1):.3f}; above threshold: "
      f"{np.mean(score[anomaly] > threshold):.2f} of anomalous, {np.mean(score[~anomaly] > threshold):.2f} of normal")
