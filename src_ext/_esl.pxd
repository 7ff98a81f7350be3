# fastswitch._esl declarations.
#
# The extension is built by setup.py as module ``fastswitch._esl`` from src_ext/_esl.pyx.
# For a qualified module name Cython looks for ``fastswitch/_esl.pxd`` on its include path,
# never for this file, so the C declarations (struct Entry, the Event / Frame / Parser
# fields and cdef methods) live at the top of _esl.pyx where every build finds them.
# This file is kept empty on purpose: if a build does associate it with _esl.pyx (e.g.
# ``cython src_ext/_esl.pyx``), an empty .pxd declares nothing that could clash.
# Other Cython modules should use the Python API (fastswitch/_esl.pyi) rather than cimport.
