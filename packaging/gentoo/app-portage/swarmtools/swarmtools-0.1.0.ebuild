# Copyright 2026 swarmtools authors
# Distributed under the terms of the GNU General Public License v2

EAPI=8

DISTUTILS_USE_PEP517=setuptools
PYTHON_COMPAT=( python3_{11..14} )

inherit distutils-r1 systemd

DESCRIPTION="Small Unix-style commands that run a Gentoo binary-package build swarm"
HOMEPAGE="https://github.com/swarmtools/swarmtools"
SRC_URI="https://github.com/swarmtools/swarmtools/archive/v${PV}.tar.gz -> ${P}.tar.gz"

LICENSE="GPL-2"
SLOT="0"
KEYWORDS="~amd64 ~arm64"
# The tests run PyPI's Portage in throw-away prefixes, sshd, a web server and
# Chromium: run them from a checkout (make test).
RESTRICT="test"

# The system Portage, for the same Python: swarmtools builds with it.
RDEPEND="
	app-arch/zstd
	app-crypt/gnupg
	dev-python/click[${PYTHON_USEDEP}]
	dev-python/filelock[${PYTHON_USEDEP}]
	dev-python/tabulate[${PYTHON_USEDEP}]
	net-misc/openssh
	net-misc/rsync
	sys-apps/portage[${PYTHON_USEDEP}]
"

python_install_all() {
	distutils-r1_python_install_all

	# The files name /usr/bin's commands and /etc/swarmtools/swarm.toml;
	# `swarm-config render` prints them for a host that differs.
	newinitd init/swarm-drone.initd swarm-drone
	newconfd init/swarm-drone.confd swarm-drone
	systemd_dounit "init/swarm-drone@.service"
	# It does nothing on a host without the swarm's user (a drone).
	exeinto /etc/portage/postsync.d
	doexe cron/postsync.d/swarm-fresh
	insinto /usr/share/swarmtools
	doins cron/crontab
}

pkg_postinst() {
	elog "To set up an orchestrator or a drone, follow \"Deploying on real hosts\" in"
	elog "${EROOT}/usr/share/doc/${PF}/README.md*. The swarm user's crontab:"
	elog "  crontab -u swarm ${EROOT}/usr/share/swarmtools/crontab"
}
