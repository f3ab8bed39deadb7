"""Robot data: the Arrow episode schema, format readers/writers, point-cloud ops, labeling, simulation.

Kept import-free on purpose: import the submodule you need (`runtime.robot.schema`,
`runtime.robot.formats.lerobot`, ...), so one area's heavy dependency never breaks another's import.
"""
