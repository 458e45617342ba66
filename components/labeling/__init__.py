"""Labels: snapshots from exports, the Label Studio client, the review queue, the
feedback round's decisions and the annotation webhook receiver."""
