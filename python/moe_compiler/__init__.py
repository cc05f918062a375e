"""moe_compiler: the Python front end of moe-compiler.

Hugging Face MoE configs (or the seed deck's presets) become a normalized
:class:`~moe_compiler.configs.MoEConfig`; from it the package emits the model graph
as MLIR (:mod:`~moe_compiler.emit`), computes the float64 reference
(:mod:`~moe_compiler.reference`), estimates sizes and traffic (:mod:`~moe_compiler.info`),
writes test weights (:mod:`~moe_compiler.weights`) and drives the C++ tools
(:mod:`~moe_compiler.driver`). numpy is the only run-time dependency.
"""

__version__ = "0.1.0"
