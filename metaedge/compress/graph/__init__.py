"""Channel-dependency analysis of any CNN traced with torch.fx (which channels must be pruned together).

User code declares its own channel-preserving ``torch.fx.wrap``-ped functions or opaque modules
(stochastic depth, custom dropout) with :func:`register_passthrough`.
"""

from metaedge.compress.graph.channel_groups import (
    ChannelGroup,
    GraphAnalysis,
    Layout,
    LayerInfo,
    analyze_channels,
    register_passthrough,
)

__all__ = ["ChannelGroup", "GraphAnalysis", "Layout", "LayerInfo", "analyze_channels", "register_passthrough"]
