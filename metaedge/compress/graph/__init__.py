"""Channel-dependency analysis of any CNN traced with torch.fx (which channels must be pruned together)."""
from metaedge.compress.graph.channel_groups import ChannelGroup, GraphAnalysis, Layout, LayerInfo, analyze_channels

__all__ = ["ChannelGroup", "GraphAnalysis", "Layout", "LayerInfo", "analyze_channels"]
