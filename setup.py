"""Install the top-level folders under one namespace (leveret.amqp, leveret.broker, leveret.config).

PyPI's py-amqp (the transport of kombu and Celery) owns the top-level module name `amqp`, so Leveret's
own `amqp/` folder must never land in site-packages under that name.

In a checkout, `leveret/amqp`, `leveret/broker` and `leveret/config` are symbolic links to the folders, so
the checkout's `leveret/` is the same tree as the installed package: `python -m leveret` and
`import leveret.broker` work from the repository's root, and type checkers see one package.
"""

from setuptools import find_packages, setup

ROOTS = ("amqp", "broker", "config")

packages = ["leveret"]
package_dir = {"leveret": "leveret"}
for root in ROOTS:
    packages.append(f"leveret.{root}")
    packages.extend(f"leveret.{root}.{sub}" for sub in find_packages(root))
    package_dir[f"leveret.{root}"] = root

# The management web page's HTML, script and style sheet ship beside its module.
package_data = {"leveret.config": ["*.yaml"], "leveret.broker.management": ["static/*"]}

setup(packages=packages, package_dir=package_dir, package_data=package_data)
