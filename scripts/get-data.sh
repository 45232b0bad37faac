#!/usr/bin/env bash
# Make sure Fashion-MNIST (the four IDX .gz files) is somewhere `freebies` looks:
#   1. already in /usr/share/datasets/fashion-mnist or ./data/FashionMNIST/raw -> nothing to do;
#   2. root with apt-get -> Debian's package dataset-fashion-mnist;
#   3. online -> torchvision's download into ./data;
#   4. otherwise say how to get it.
set -u
PY=${PY:-.venv/bin/python}
have() { [ -f "$1/train-images-idx3-ubyte.gz" ] && [ -f "$1/t10k-labels-idx1-ubyte.gz" ]; }

for d in "${FREEBIES_DATA:-/nonexistent}/fashion-mnist" /usr/share/datasets/fashion-mnist \
         data/fashion-mnist data/FashionMNIST/raw; do
  if have "$d"; then echo "Fashion-MNIST found in $d"; exit 0; fi
done
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's dataset-fashion-mnist ..."
  if apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null \
     && have /usr/share/datasets/fashion-mnist; then
    echo "Fashion-MNIST installed in /usr/share/datasets/fashion-mnist"; exit 0
  fi
  echo "apt-get could not install dataset-fashion-mnist; trying torchvision's download" >&2
fi
if "$PY" -c "from torchvision.datasets import FashionMNIST; FashionMNIST('data', download=True); FashionMNIST('data', train=False, download=True)" >/dev/null 2>&1 \
   && have data/FashionMNIST/raw; then
  echo "Fashion-MNIST downloaded to data/FashionMNIST/raw"; exit 0
fi
echo "error: Fashion-MNIST is not here and could not be fetched. Install Debian's package" \
     "'dataset-fashion-mnist' (as root: apt-get update && apt-get install dataset-fashion-mnist)," \
     "or copy the four IDX .gz files into data/fashion-mnist/ and rerun." >&2
exit 2
