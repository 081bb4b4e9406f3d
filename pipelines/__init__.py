"""The jobs users submit (``ray job submit --working-dir . -- python pipelines/<job>.py --config ...``),
importable as ``activeft.pipelines``; thin compositions of library stages."""
