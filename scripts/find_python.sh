#!/usr/bin/env bash
# Print a working interpreter for Python X.Y: `pythonX.Y` on PATH when it runs
# (pyenv shims refuse when X.Y is not the selected version), else pyenv's copy.
set -u
want=$1
if "python$want" -c "pass" >/dev/null 2>&1; then command -v "python$want"; exit 0; fi
root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
for candidate in $(ls -d "$root"/versions/"$want"* 2>/dev/null | sort -V -r); do
  if [ -x "$candidate/bin/python$want" ]; then echo "$candidate/bin/python$want"; exit 0; fi
done
echo "no Python $want found" >&2
exit 1
