"""What several test files share (STYLE: one support module, no test file importing another)."""

import os


class RunsACommand:
  """Pickles to `os.system(command)`: the classic malicious checkpoint."""

  def __init__(self, command: str):
    self.command = command

  def __reduce__(self):
    return (os.system, (self.command,))
