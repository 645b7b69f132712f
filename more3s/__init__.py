"""more3s: MORE-3S, multimodal offline RL in a shared semantic space.

Subpackages: ``envs`` (tasks, prompts, scores), ``data`` (collection, loading, samplers),
``encoder`` (regions, frozen LXMERT, embedding cache), ``model`` (attention, blocks, heads),
``rollout`` (ring-buffer KV cache, engine), ``kernels`` (Triton).
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
