"""Chapter 08: does the map hold up? Prompt length (`length`), skill separability (`separability`), replication
across model families (`replication`) and their claims (`claims`); the rules table is `studies.rules`."""

from .claims import depth_claims, length_claims, separability_claim
from .inputs import compare_atlases, families, steering_study
from .length import agreement, bucket_lengths, hubs, length_atlases, profiles
from .replication import book_atlas, depth_diff, depth_profiles, hub_depths, source
from .separability import localization, ranking, score


def budget(P: dict, n_layers: int, families: list[str], compare: list[str]) -> str:
    """One line: what the chapter runs in this profile."""
    per = ", ".join(f"{b} {P['prompts'][b]} prompts every {P['layer_stride'].get(b, 1)} layer(s)" for b in P["buckets"])
    units = sum(len(range(0, n_layers, P["layer_stride"].get(b, 1))) for b in P["buckets"]) * len(P["components"]) \
        * len(P["methods"]) * len(families)
    return (f"budget: length atlas on {len(families)} families ({', '.join(families) or 'none'}) x {P['components']} x "
            f"{P['methods']}: {per} (~{units} units, one seed; short from chapter 02's cache where it ran); "
            f"steering per bucket and knockout from chapter 04's study (its cache); replication on {', '.join(compare)} "
            f"({P['compare_prompts']} prompts per family, zero ablation, one seed; this model: chapter 02's stored atlas "
            f"where it ran, else the short-bucket one)")


__all__ = ["agreement", "book_atlas", "bucket_lengths", "budget", "compare_atlases", "families", "steering_study", "depth_claims", "depth_diff", "depth_profiles", "hub_depths", "hubs",
           "length_atlases", "length_claims", "localization", "profiles", "ranking", "score", "separability_claim", "source"]
