def merge_intervals(intervals: list[list[int]]) -> list[list[int]]:
    # Sorted by start, an interval overlaps the merged ones only if it overlaps the last of them.
    merged: list[list[int]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged
