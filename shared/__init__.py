"""Contract shared by the segmentgate origin and edge.

Playback tokens, invalidation events, key sets and problem details are
defined here once so that both services read and write the same formats.
"""
